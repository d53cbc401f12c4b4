"""FID/KID against sampling steps, the guidance ruler, plain-tensor diagnostics."""
