# The pinned OpenTelemetry Collector (contrib) binary on busybox. The upstream image is
# FROM scratch: no shell and no HTTP client, so compose could not run a healthcheck against
# the health_check extension (:13133). The binary is static; nothing else changes.
FROM otel/opentelemetry-collector-contrib:0.147.0 AS collector

FROM busybox:1.37.0
COPY --from=collector /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=collector /otelcol-contrib /otelcol-contrib
USER 10001:10001
EXPOSE 4317 4318 8889 13133
ENTRYPOINT ["/otelcol-contrib"]
CMD ["--config", "/etc/otelcol-contrib/config.yaml"]
