"""The wire schema: pydantic models of the /v1 API, its OpenAPI document, and record -> wire conversion."""
