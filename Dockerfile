# dpsd container image: a static binary on distroless, running as nonroot.
# See docs/operations.md (deploy, ports, TLS, backup, upgrade) and compose.yaml.
#
#   docker build -t dpsd .
#   docker run -d --name dpsd -v dpsd-data:/data -p 8883:8883 -p 443:8443 \
#     -e DPSD_TLS_NAMES=dps.example.com -e DPSD_API_HOST_NAME=dps.example.com \
#     -e DPSD_HUBS=myhub.azure-devices.net dpsd
#   docker exec dpsd dpsd config print       # what runs, and where each value came from

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# .dockerignore keeps data directories, keys, binaries and .git out of this.
COPY . .
# Static: no cgo (dpsd does not link the TPM simulator, which needs cgo).
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/dpsd ./cmd/dpsd \
 && mkdir -p /out/data && chown 65532:65532 /out/data && chmod 0700 /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dpsd /usr/local/bin/dpsd
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
VOLUME ["/data"]
# 8883: MQTT over TLS (devices).
# 8443: HTTPS: service API, /backup, /metrics, /healthz, /readyz, and MQTT over
#       WebSocket on any path (map it to 443 for the Azure SDKs' WebSocket transport).
# Plain MQTT (1883) is off in the container; outside it defaults to loopback only.
EXPOSE 8883 8443
# The image's settings are environment variables, not flags, so that
# `docker exec dpsd dpsd config print` (and the admin commands run there)
# see exactly what `dpsd serve` runs with. Override them with -e.
ENV DPSD_DATA_DIR=/data
ENV DPSD_MQTT_ADDR=""
ENV DPSD_MQTTS_ADDR=:8883
ENV DPSD_API_ADDR=:8443
ENV DPSD_LOG_FORMAT=json
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 CMD ["/usr/local/bin/dpsd", "health"]
ENTRYPOINT ["/usr/local/bin/dpsd"]
CMD ["serve"]
