# One image for every d4-bridge hop: `docker run d4-bridge <subcommand> ...`.
# TLS certificates, HMAC keys and site configuration are mounted at run time (docker-compose.yml),
# never copied in: .dockerignore keeps deploy/secrets/ and deploy/config/ out of the build context.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    D4BRIDGE_METRICS_PORT=9100

WORKDIR /opt/d4-bridge
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY bridge ./bridge
# gcc: the packet loops are compiled ahead of time into the package (no numba in the hops: less
# memory, fast start; without it they run through numba's JIT)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && pip install . \
    && python -m bridge.aot "$(python -c 'import bridge, os; print(os.path.dirname(bridge.__file__))')" \
    # self-test of the installed package (from /, so the source tree here is not what gets imported)
    && cd / && python -c "from bridge import records; records.decode(records.encode('DeadLetter', records.dead_letter('build', 'check', 'image self-test')), expect='DeadLetter')" \
    && useradd --system --uid 10001 --user-group --home-dir /home/d4bridge --create-home d4bridge \
    # sink's output directory: a named volume mounted here starts with this owner
    && mkdir -p /var/lib/d4-bridge/sink && chown -R d4bridge:d4bridge /var/lib/d4-bridge

USER d4bridge
WORKDIR /home/d4bridge
EXPOSE 4443 9100

# Healthy while the hop serves /metrics (every long-running hop does, on D4BRIDGE_METRICS_PORT).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('D4BRIDGE_METRICS_PORT', '9100'), timeout=4)"

ENTRYPOINT ["d4-bridge"]
CMD ["--help"]
