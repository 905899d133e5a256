"""Server-side sidecar in the TEE: RA-TLS termination, relay to the backend, unseal init step."""
