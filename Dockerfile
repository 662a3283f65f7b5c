# ssegate as a container image, from a release binary built on Debian bookworm:
#     cargo build --release && podman build -t ssegate .     (or docker build -t ssegate .)
#     podman run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 ssegate
# The config is the Debian package's (/etc/ssegate/ssegate.yaml); mount your own
# over it. Inside the container both listeners bind all interfaces (the
# SSEGATE_* variables below): publish the admin port to loopback or a private
# network only. Checked in CI by scripts/container-check.
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
# The release profile keeps line tables (137 MB); a stripped copy is about 18 MB:
#     strip -o target/ssegate.stripped target/release/ssegate
#     podman build --build-arg BIN=target/ssegate.stripped -t ssegate .
ARG BIN=target/release/ssegate
COPY ${BIN} /usr/bin/ssegate
COPY pkg/deb/ssegate.yaml /etc/ssegate/ssegate.yaml
ENV SSEGATE_CONFIG=/etc/ssegate/ssegate.yaml \
    SSEGATE_LISTEN=0.0.0.0:8080 \
    SSEGATE_ADMIN_LISTEN=0.0.0.0:9090 \
    SSEGATE_LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8080 9090
# Any unprivileged uid works: the gateway writes nothing but its logs (stderr).
USER 65534:65534
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/ssegate"]
CMD ["run"]
