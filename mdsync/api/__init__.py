"""HTTP plumbing shared by every feature: errors, validation, pagination, routing, OpenAPI."""
