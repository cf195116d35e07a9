"""The attacker's corpus (adversarial_corpus.py) through the sanitizer exactly as a user runs it:
`sanitize-file --pnat SPEC` and `sanitize-file --cryptopan-key FILE`, no policy file and no
other flag, so the defaults are what is tested.

Done (issue 13) means: no sanitized packet holds a private value in any form, and no checksum
went bad. Two oracles judge it:

- the product's `leakcheck` (bridge/sanitize/leakcheck.py), on the files;
- an independent check written here against the corpus's own annotations, sharing no code
  with the product: every sanitized packet is searched for every form of every private value
  of the corpus (raw, inverted, plus one, text, PTR labels, the IPv6 prefix, MACs, EUI-64; see
  `private_forms`), every private slot is checked not to be kept as it was, not even in part
  where the capture was cut inside it, and every checksum the corpus built is verified again.

A failure prints a table, class -> link type -> leaking packets and the first offence (form,
byte offset, caplen of that packet), so whoever fixes the walk sees what to fix.

Every class in every link type at every cut: about 140,000 packets per invocation, ~8 s each.
"""

from __future__ import annotations

import inspect
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from adversarial_corpus import (
    CLASSES, PNAT_SPEC, PRIVATE_CIDRS, T0_NS, Sample, corpus_env, every_offset, kept_slots, private_forms, private_macs,
    write_corpus,
)
from bridge.pcap import iter_packets, read_pcap
from bridge.sanitize.offline import sanitize_file
from bridge.sanitize.policy import policy_from_flags

CRYPTOPAN_KEY = bytes(range(32))


class FormScanner:
    """Finds byte patterns (all at least 4 bytes long) in a buffer: one vectorized pass over its
    4-byte windows against the patterns' first four bytes, then an exact compare. Written here
    rather than reusing leakcheck's scanner: this oracle must share no code with the product."""

    def __init__(self, forms: dict[bytes, str]) -> None:
        self.by_head: dict[int, list[tuple[bytes, str]]] = defaultdict(list)
        for pattern, name in sorted(forms.items(), key=lambda kv: -len(kv[0])):
            self.by_head[int.from_bytes(pattern[:4], "big")].append((pattern, name))
        self.heads = np.array(sorted(self.by_head), dtype=np.uint32)

    def hits(self, blob: bytes) -> Iterator[tuple[int, bytes, str]]:
        """(offset, pattern, form name) of every match, in offset order."""
        a = np.frombuffer(blob, dtype=np.uint8).astype(np.uint32)
        if len(a) < 4:
            return
        keys = (a[:-3] << 24) | (a[1:-2] << 16) | (a[2:-1] << 8) | a[3:]
        for pos in np.nonzero(np.isin(keys, self.heads))[0].tolist():
            for pattern, name in self.by_head[int(keys[pos])]:
                if blob.startswith(pattern, pos):
                    yield pos, pattern, name


@dataclass
class Offence:
    """Why one sanitized packet fails: what was found where."""

    what: str
    offset: int | str


@dataclass
class Outcome:
    """One corpus packet after sanitizing: its output (None: dropped) and what is wrong with it."""

    sample: Sample
    out: bytes | None
    leaks: list[Offence] = field(default_factory=list)
    oracle: list[Offence] = field(default_factory=list)
    bad_sums: list[Offence] = field(default_factory=list)


@dataclass
class Run:
    """The whole corpus sanitized with one invocation."""

    name: str
    outcomes: list[Outcome]
    oracle_errors: dict[int, str]
    oracle_checksums: dict[int, dict[str, int]]


def _oracle(orig: Path, sanitized: Path):
    """leakcheck as a user would call it, with the MACs when it takes them. Imported here: it
    is being rewritten, and a broken oracle must show as an oracle error, not hide this test."""
    from bridge.sanitize.leakcheck import leakcheck

    kw = {}
    if "macs" in inspect.signature(leakcheck).parameters:
        kw["macs"] = list(private_macs())
    return leakcheck(orig, sanitized, list(PRIVATE_CIDRS), **kw)


def _sanitize(name: str, policy_args: dict[str, str], files: dict[int, tuple[Path, list[Sample]]], work: Path) -> Run:
    policy = policy_from_flags(**policy_args)
    scanner = FormScanner(private_forms(_ENV))
    outcomes: list[Outcome] = []
    oracle_errors: dict[int, str] = {}
    oracle_checksums: dict[int, dict[str, int]] = {}
    for linktype, (path, batch) in files.items():
        out_path = work / f"{name}-{linktype}.pcap"
        sanitize_file(path, out_path, policy, progress=False)
        mine = [Outcome(s, None) for s in batch]
        _, recs = read_pcap(out_path)
        kept: list[Outcome] = []
        for ts, _cap, _orig, data in iter_packets(recs):
            o = mine[(ts - T0_NS) // 1000]
            o.out = bytes(data)
            kept.append(o)
        for o in kept:
            for pos, _pattern, form in scanner.hits(o.out):
                o.leaks.append(Offence(form, pos))
            o.leaks += [Offence(what, off) for what, off in kept_slots(o.sample.frame, o.out)]
            o.bad_sums += [Offence(f"checksum@{c.field}", c.field) for c in o.sample.frame.sums if c.verifies(o.out) is False]
        try:
            report = _oracle(path, out_path)
            for f in report.leaks:
                form = getattr(f, "form", getattr(f, "kind", ""))
                kept[f.packet].oracle.append(Offence(f"{form} in {f.where} ({f.address})", getattr(f, "offset", f.where)))
            oracle_checksums[linktype] = dict(report.new_checksum_errors)
        except Exception as exc:  # the oracle must never crash; when it does, that is a finding too
            where = traceback.extract_tb(exc.__traceback__)[-1]
            oracle_errors[linktype] = f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
        outcomes += mine
    return Run(name, outcomes, oracle_errors, oracle_checksums)


_ENV = corpus_env()

INVOCATIONS = {
    "pnat": lambda work: {"pnat": PNAT_SPEC},
    "cryptopan": lambda work: {"cryptopan_key": str(_key_file(work))},
}


def _key_file(work: Path) -> Path:
    key = work / "cryptopan.key"
    key.write_bytes(CRYPTOPAN_KEY)
    return key


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, list[Sample]]]:
    return write_corpus(tmp_path_factory.mktemp("adversarial"), _ENV, offsets=every_offset)


@pytest.fixture(scope="module", params=sorted(INVOCATIONS))
def run(request: pytest.FixtureRequest, corpus: dict[int, tuple[Path, list[Sample]]],
        tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp(f"sanitized-{request.param}")
    return _sanitize(request.param, INVOCATIONS[request.param](work), corpus, work)


def table(run: Run, attr: str) -> str:
    """class -> link type -> packets failing (of those sent), with the first offence."""
    rows: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    sent: Counter = Counter()
    for o in run.outcomes:
        key = (o.sample.cls.name, o.sample.link.name)
        sent[key] += 1
        if getattr(o, attr):
            rows[key].append(o)
    if not rows:
        return ""
    order = {c.name: i for i, c in enumerate(CLASSES)}
    lines = [f"{'class':34} {'link':10} {'bad':>5}/{'sent':<5} first: what @ byte offset (packet caplen/origlen)"]
    for (cls, link), bad in sorted(rows.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        first = min(bad, key=lambda o: o.sample.caplen)
        off = getattr(first, attr)[0]
        forms = sorted({x.what for o in bad for x in getattr(o, attr)})
        lines.append(f"{cls:34} {link:10} {len(bad):5}/{sent[(cls, link)]:<5} {off.what} @ {off.offset} "
                     f"({first.sample.caplen}/{len(first.sample.frame)}); all: {', '.join(forms)}")
    by_class = Counter(cls for cls, _ in rows)
    lines.append(f"{sum(len(v) for v in rows.values())} packets in {len(by_class)} classes")
    return "\n".join(lines)


def test_no_private_value_survives(run: Run) -> None:
    """0 packets with a private value in any form, by the independent check and by leakcheck."""
    mine = table(run, "leaks")
    oracle = table(run, "oracle")
    errors = "\n".join(f"linktype {lt}: leakcheck crashed: {e}" for lt, e in sorted(run.oracle_errors.items()))
    assert not (mine or oracle or errors), (
        f"\n--{run.name}: private values left (independent check)--\n{mine or 'none'}"
        f"\n--{run.name}: private values left (leakcheck)--\n{oracle or 'none'}\n{errors}")


def test_no_bad_checksum(run: Run) -> None:
    """0 new bad checksums: every checksum the corpus built verifies in the output wherever the
    bytes it covers are all there (quoted and tunnelled ones included), and leakcheck agrees."""
    mine = table(run, "bad_sums")
    oracle = {lt: e for lt, e in run.oracle_checksums.items() if e}
    assert not (mine or oracle), f"\n--{run.name}: bad checksums--\n{mine}\nleakcheck: {oracle}"


def test_ordinary_traffic_is_delivered(run: Run) -> None:
    """The fail-closed walk must not pass the test by dropping everything: whole ordinary
    telescope packets (backscatter, UDP, ICMP echo, ESP, AH) are kept, in every link type."""
    lost = sorted({(o.sample.cls.name, o.sample.link.name) for o in run.outcomes
                   if o.sample.cls.channel == "ordinary" and o.sample.caplen == len(o.sample.frame) and o.out is None})
    assert not lost, f"{run.name}: whole ordinary packets dropped: {lost}"


def test_raw_ip_linktypes_are_sanitized_like_101(run: Run) -> None:
    """Link types 228 (raw IPv4) and 229 (raw IPv6) give exactly what 101 gives."""
    by_key = {(o.sample.cls.name, o.sample.link.linktype, o.sample.caplen): o.out for o in run.outcomes}
    differ = sorted({cls for (cls, lt, cap), out in by_key.items() if lt in (228, 229) and out != by_key[(cls, 101, cap)]})
    assert not differ, f"{run.name}: classes sanitized differently in 228/229 than in 101: {differ}"


def test_corpus_is_valid_and_leaks_before_sanitizing(corpus: dict[int, tuple[Path, list[Sample]]]) -> None:
    """The corpus itself: every checksum valid, and every class holds private values that the
    independent check sees (else a clean result would prove nothing)."""
    scanner = FormScanner(private_forms(_ENV))
    seen: set[str] = set()
    for _lt, (_path, batch) in corpus.items():
        for s in batch:
            if s.caplen == len(s.frame):
                assert all(c.verifies(s.data) is not False for c in s.frame.sums), s.cls.name
                if next(scanner.hits(s.data), None) is not None:
                    seen.add(s.cls.name)
    assert {c.name for c in CLASSES} <= seen, sorted({c.name for c in CLASSES} - seen)


def test_leakcheck_sees_every_class_before_sanitizing(tmp_path: Path) -> None:
    """The oracle's recall: on the unsanitized corpus (whole frames), leakcheck flags every
    packet, since each holds private values. Else its "none left" after sanitizing proves nothing
    for the forms it cannot see."""
    files = write_corpus(tmp_path, _ENV, offsets=lambda link, pkt: [len(pkt)])
    blind: dict[str, list[str]] = defaultdict(list)
    for _lt, (path, batch) in files.items():
        hit = {f.packet for f in _oracle(path, path).leaks}
        for i, s in enumerate(batch):
            if i not in hit:
                blind[s.cls.name].append(s.link.name)
    assert not blind, "leakcheck sees no private value in: " + "; ".join(f"{c} ({', '.join(v)})" for c, v in blind.items())
