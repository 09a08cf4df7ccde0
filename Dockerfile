# Gatekeeper. Config and data live in the /data volume (see docs/operator-guide.md):
#   docker build -t gatekeeper .
#   docker run --rm -v "$PWD/data:/data" gatekeeper \
#       generate-registration -c /data/config.yaml -o /data/registration.yaml
#   docker run -d -v "$PWD/data:/data" -p 127.0.0.1:29331:29331 gatekeeper
# Inside a container the listeners must bind 0.0.0.0 (web.hostname, appservice.hostname),
# or GATEKEEPER_WEB__HOSTNAME=0.0.0.0 etc. Never publish the appservice port (29330).

# Build stage: Gatekeeper and its dependencies go into a venv that is copied as a whole.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/gatekeeper
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY gatekeeper gatekeeper
COPY appservice appservice
COPY bot bot
COPY migrations migrations
# constraints.txt pins every dependency to the versions the test suite ran with.
RUN /opt/gatekeeper/bin/pip install --constraint constraints.txt .

# Run stage: the same base (the venv links to its python), no build tools, not root.
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 1337 gatekeeper \
    && useradd --system --uid 1337 --gid 1337 --home-dir /data --no-create-home gatekeeper \
    && mkdir /data \
    && chown 1337:1337 /data
COPY --from=build /opt/gatekeeper /opt/gatekeeper
ENV PATH=/opt/gatekeeper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1337:1337
WORKDIR /data
VOLUME /data
# 29331: the web endpoint (publish it through your reverse proxy).
# 29330: the appservice listener, for Synapse only (never publish it).
EXPOSE 29331 29330
# 200 while the database and Synapse answer, 503 otherwise. The port follows
# GATEKEEPER_WEB__PORT; if you change web.port in config.yaml instead, set that variable too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GATEKEEPER_WEB__PORT', '29331'); urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]
ENTRYPOINT ["gatekeeper"]
CMD ["-c", "/data/config.yaml"]
