# Ferry node image: static binary, non-root, data in a volume.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# The whole context, .git included: go build stamps the revision from it
# (ferry version, ferry_build_info); .git does not reach the final image.
COPY . .
RUN CGO_ENABLED=0 go build -buildvcs=auto -trimpath -ldflags="-s -w" -o /out/ferry ./cmd/ferry \
 && /out/ferry version \
 && mkdir -p /out/home

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ferry /usr/local/bin/ferry
# The home exists in the image, owned by the user the node runs as
# (distroless nonroot: 65532), so a new volume mounted there is writable.
COPY --from=build --chown=65532:65532 /out/home /var/lib/ferry
ENV FERRY_HOME=/var/lib/ferry
# In a container the embedded NATS and the admin API must listen beyond
# loopback to be reachable; publish their ports only where you mean to.
ENV FERRY_NATS_LISTEN=0.0.0.0:4222 FERRY_ADMIN_LISTEN=0.0.0.0:7480
VOLUME ["/var/lib/ferry"]
EXPOSE 4001/tcp 4001/udp 4222/tcp 7480/tcp
USER 65532:65532
# Distroless has no shell or curl: the binary checks itself (exit 1 when
# the node does not answer, is not live, or is below its disk reserve).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["/usr/local/bin/ferry", "check", "--container"]
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["run"]
