"""Under the JIT, each kernel module's ``warm_up`` compiles exactly what a hop's first records need.

numba specialises on argument types (a read-only ``bytes`` buffer is another type than a
``bytearray``): a warm-up that misses the hop's types leaves the first records to pay a second
or more of loading, which the chain benchmark showed as a 3.6 s stall at egress. The check runs
in a fresh interpreter, so other tests' calls cannot have compiled the hop's types already, with
the JIT forced (the ahead-of-time build has one signature per loop: test_compiled.py checks that
the hops' buffers fit it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import json
    from bridge import assembler, egress_framing
    from bridge.backscatter import aggregate, classify
    from bridge.backscatter.telescope import Telescopes
    from bridge.pcap import global_header, pack_record

    kernels = {
        "assembler": [assembler._loops.walk_records],
        "egress_framing": [egress_framing._loops.chunk_ends, egress_framing._loops.scale_fracs],
        "analyze": [classify._loops.count_records, classify._loops.classify_records, aggregate._loops.dedup,
                    aggregate._loops.update_vectors],
    }
    def signatures():
        return {name: [len(k.signatures) for k in ks] for name, ks in kernels.items()}

    assembler.warm_up(); egress_framing.warm_up(); aggregate.warm_up()
    warm = signatures()

    # the first records of each hop, with the types the hops pass (bytes read from a socket or a record)
    ip = bytes.fromhex("45000028000040004006000008080808c0000207")
    syn_ack = b"\\0" * 12 + b"\\x08\\x00" + ip + bytes.fromhex("01bb3039000000000000000150121000" "00000000")
    records = b"".join(pack_record(10**18 + i * 1000, syn_ack) for i in range(50))
    a = assembler.PcapAssembler(max_age=0.1)
    a.feed(global_header(1, 65535, False) + records)
    a.flush_due(); a.close()
    payloads = egress_framing.frame_payloads(egress_framing.convert_precision(records, False, True), 1000)
    agg = aggregate.Aggregator(Telescopes(["192.0.2.0/24"]))
    agg.process(classify.classify(records, 1, False), "site", "sensor")
    print(json.dumps({"warm": warm, "after": signatures(), "payloads": len(payloads)}))
""")


def test_warm_up_compiles_what_the_hops_call() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, D4_JIT="1"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["payloads"] > 1
    for module, counts in result["warm"].items():
        assert all(n >= 1 for n in counts), f"{module}: a kernel was not compiled by warm_up: {counts}"
    assert result["after"] == result["warm"], "the hops' first calls compiled new specialisations"
