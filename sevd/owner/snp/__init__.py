"""The guest owner's SEV-SNP tools: launch digests (OVMF and Xen PVH), ID blocks, attestation-report
verification and the VCEK key server.  Imports only sevd.abi, sevd.errors and sevd.owner."""
