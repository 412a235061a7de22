"""Operations: health, readiness, the OpenAPI document, metrics, backups and replication."""
