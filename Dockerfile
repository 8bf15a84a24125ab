# Ferry node image: static binary, non-root, data in a volume.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ferry ./cmd/ferry

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ferry /usr/local/bin/ferry
ENV FERRY_HOME=/var/lib/ferry
# In a container the embedded NATS and the admin API must listen beyond
# loopback to be reachable; publish their ports only where you mean to.
ENV FERRY_NATS_LISTEN=0.0.0.0:4222 FERRY_ADMIN_LISTEN=0.0.0.0:7480
VOLUME ["/var/lib/ferry"]
EXPOSE 4001/tcp 4001/udp 4222/tcp 7480/tcp
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["run"]
