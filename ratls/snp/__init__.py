"""AMD SEV-SNP: parse (:mod:`.abi`), verify to the pinned AMD roots (:mod:`.verify`), claims (:mod:`.claims`).

Layers as in go-sev-guest: ``abi`` turns bytes into a structure and checks must-be-zero fields;
``verify`` checks the chain, signature and TCB binding; policy evaluation (``ratls.policy``) then
judges the claims. :mod:`.der` reads the AMD certificates (serial 0) without ``cryptography.x509``.
"""
