"""Client-side forward proxy: verifies the sidecar's RA-TLS evidence before relaying a byte."""
