# The ocfs2-csi image: the one binary (`ocfs2-csi controller`, `ocfs2-csi
# node`) and the tools it runs, on Debian bookworm.
#
# scripts/image.sh builds it with buildah on a machine that reaches no
# container registry: both stages start from localhost/ocfs2-csi-base:bookworm
# (made by scripts/image-base.sh from Debian's packages), the build stage
# borrows the host's Rust toolchain and crate cache through volumes (cargo
# runs offline), and apt reads the host's sources from a volume on /mnt:
#
#   buildah bud --layers --pull=never --network host --target build \
#     -v "$(rustc --print sysroot):/opt/rust:ro" \
#     -v "$CARGO_HOME/registry:/usr/local/cargo/registry" \
#     -v "$PWD/.cache/image/target:/cargo-target" \
#     -v "<host apt sources + apt.conf>:/mnt:ro" --build-arg APT_CONFIG=/mnt/apt.conf \
#     --build-arg CARGO_NET_OFFLINE=true .
#   buildah bud --layers --pull=never --network host \
#     -v "<host apt sources + apt.conf>:/mnt:ro" --build-arg APT_CONFIG=/mnt/apt.conf \
#     --build-arg CARGO_NET_OFFLINE=true --build-arg VERSION=0.1.0 \
#     -t localhost/ocfs2-csi:0.1.0 .
#
# (the second run takes the build stage from the layer cache; it is separate
# only so the runtime image carries no empty /opt/rust or /cargo-target mount
# points).
#
# With a registry, no volumes are needed: take a Rust image for the build
# stage and a Debian one for the runtime (names without a registry: your
# configured one or mirror resolves them):
#
#   buildah bud --build-arg BUILDER_IMAGE=rust:1-bookworm \
#     --build-arg BASE_IMAGE=debian:bookworm-slim \
#     --build-arg VERSION=0.1.0 -t ocfs2-csi:0.1.0 .
#
# (docker build takes the same arguments.) The builder must be Debian
# bookworm (or older glibc) so the binary runs on the runtime stage, and its
# Rust at least the crate's rust-version (1.89).

ARG BASE_IMAGE=localhost/ocfs2-csi-base:bookworm
ARG BUILDER_IMAGE=${BASE_IMAGE}

FROM ${BUILDER_IMAGE} AS build
# Set by scripts/image.sh: apt then reads the build host's sources and
# Acquire options from a volume, so neither is written into a layer.
ARG APT_CONFIG
# true when the crate cache is mounted from the host (cargo fetch ran there).
ARG CARGO_NET_OFFLINE=false
# /opt/rust/bin: a toolchain mounted from the host (empty otherwise; a Rust
# image's own /usr/local/cargo/bin comes next).
ENV CARGO_HOME=/usr/local/cargo \
    CARGO_TARGET_DIR=/cargo-target \
    PATH=/opt/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# cc links the binary and builds ring; build.rs runs protoc, and csi.proto
# imports google/protobuf/descriptor.proto from libprotobuf-dev.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
# The workspace's other member (the test harness); cargo reads every
# member's manifest, though the binary does not use it.
COPY testkit testkit
# The target directory may be a volume (kept between builds), so the binary
# is copied out into the layer.
RUN cargo --version && rustc --version \
 && cargo build --release --locked --bin ocfs2-csi \
 && install -D -m 0755 "$CARGO_TARGET_DIR/release/ocfs2-csi" /out/ocfs2-csi

FROM ${BASE_IMAGE}
ARG APT_CONFIG
# What the binary runs: mkfs/tunefs/debugfs/fsck/mount.ocfs2 and
# ocfs2_hb_ctl (ocfs2-tools), modprobe (kmod), mount, umount and losetup
# (mount), blkid and friends (util-linux). policy-rc.d keeps ocfs2-tools'
# maintainer scripts from starting o2cb while installing. /etc/mtab: the
# OCFS2 tools read it to refuse a mounted device, and fail without it ("No
# such file or directory while determining whether /dev/loop0 is mounted");
# a minimal Debian root has none.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
 && chmod 0755 /usr/sbin/policy-rc.d \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ocfs2-tools kmod mount util-linux \
 && ln -sf ../proc/self/mounts /etc/mtab \
 && apt-get clean \
 && rm -rf /usr/sbin/policy-rc.d /var/lib/apt/lists/* /var/cache/apt/*.bin \
      /var/log/apt/* /var/log/dpkg.log /var/cache/debconf/*-old
COPY --from=build /out/ocfs2-csi /usr/bin/ocfs2-csi
# Last, so a new commit only changes this layer.
ARG VERSION=unknown
ARG REVISION=
ARG SOURCE=
LABEL org.opencontainers.image.title="ocfs2-csi" \
      org.opencontainers.image.description="Kubernetes CSI driver: ReadWriteMany OCFS2 volumes carved out of shared SAN LUNs (controller and node plugin)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/bin/ocfs2-csi"]
