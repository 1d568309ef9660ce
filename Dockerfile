# syntax=docker/dockerfile:1
#
# The localdns images, for those with a container engine:
#
#   docker build --target nodecache -t localdns/nodecache:dev .
#   docker build --target webhook   -t localdns/webhook:dev .
#   docker build --target stub      -t localdns/stub:dev .
#   docker build --target stub-filecap -t localdns/stub-filecap:dev .
#
# `make images` builds the same three images without an engine
# (hack/imagebuild, tested in make test); keep the two in step: the same
# static binaries, entrypoints and users (hack/imagebuild's tests compare them
# with this file), and the node cache with Debian 12's iptables, both backends.
# `make push REGISTRY=...` pushes the daemonless build.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Static (no libc), reproducible paths, version stamped.
RUN for b in localdns-nodecache localdns-webhook localdns-stub; do \
      CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X github.com/localdns/localdns/internal/version.Version=${VERSION}" \
        -o /out/$b ./cmd/$b || exit 1; \
    done

# The node cache runs iptables (nft and legacy: it uses the backend the node's
# kube-proxy uses), so it needs Debian's iptables with its libraries and
# plugins; the plain names point at nft, as on Debian. It runs as root with
# only NET_ADMIN, NET_BIND_SERVICE and NET_RAW (see manifests/base/nodecache.yaml).
FROM debian:bookworm-slim AS nodecache
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && update-alternatives --set iptables /usr/sbin/iptables-nft \
 && update-alternatives --set ip6tables /usr/sbin/ip6tables-nft
COPY --from=build /out/localdns-nodecache /localdns-nodecache
USER 0:0
ENTRYPOINT ["/localdns-nodecache"]

# The webhook and the stub need nothing but their static binary; distroless
# static gives /etc/passwd with nonroot (65532) and CA certificates.
FROM gcr.io/distroless/static-debian12:nonroot AS webhook
COPY --from=build /out/localdns-webhook /localdns-webhook
USER 65532:65532
ENTRYPOINT ["/localdns-webhook"]

FROM gcr.io/distroless/static-debian12:nonroot AS stub
COPY --from=build /out/localdns-stub /localdns-stub
USER 65532:65532
ENTRYPOINT ["/localdns-stub"]

# The stub whose binary carries the file capability cap_net_bind_service=+ep,
# so it binds 127.0.0.1:53 as non-root without the pod sysctl (see
# docs/deploy.md). The capability is an extended attribute: BuildKit's COPY
# (Docker 23 and later) keeps it, the legacy builder's does not.
FROM build AS stub-filecap-binary
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_bind_service=+ep /out/localdns-stub

FROM gcr.io/distroless/static-debian12:nonroot AS stub-filecap
COPY --from=stub-filecap-binary /out/localdns-stub /localdns-stub
USER 65532:65532
ENTRYPOINT ["/localdns-stub"]
