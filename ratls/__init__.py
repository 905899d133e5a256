"""ratls: attested TLS for confidential inference. The core (this package) does no I/O except ratls.io."""
