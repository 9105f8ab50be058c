# syntax=docker/dockerfile:1
# One image holds the operator (/manager, the entrypoint) and the server
# (/socketserver): SocketClusters without spec.image run the operator's own
# image, so both always come from the same source. Build: make docker-build.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/manager ./cmd/socketserver

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/manager /out/socketserver /
USER 65532:65532
ENTRYPOINT ["/manager"]
