# Gatekeeper: config and data live in /data.
#   docker run -v ./data:/data gatekeeper generate-registration -c /data/config.yaml -o /data/registration.yaml
#   docker run -v ./data:/data -p 29330:29330 gatekeeper
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY appservice appservice
COPY bot bot
COPY migrations migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --home-dir /data --uid 1337 gatekeeper \
    && mkdir /data && chown gatekeeper /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER gatekeeper
WORKDIR /data
VOLUME /data
EXPOSE 29330
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:29330/_matrix/mau/ready').status != 200)"
ENTRYPOINT ["gatekeeper"]
CMD ["-c", "/data/config.yaml"]
