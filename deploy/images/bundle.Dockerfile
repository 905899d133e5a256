# syntax=docker/dockerfile:1.7
#
# Ships an encrypted, signed model bundle (`ratls model encrypt ... --sign-key ...`) as an OCI image,
# so every replica pulls it like any other image. It holds ciphertext only: the registry, the node
# and its disk never see the model. The pod's `bundle` init container copies /bundle/ into an
# emptyDir for the unseal step. Build with the bundle's directory as the context:
#
#   docker build -f deploy/images/bundle.Dockerfile -t ghcr.io/OWNER/digits-bundle:1.0.0 owner/bundles

FROM busybox:1.36
COPY digits.bundle /bundle/digits.bundle
USER 10001:10001
ENTRYPOINT ["cp", "-R", "/bundle/.", "/bundles/"]
