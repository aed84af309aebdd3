"""Pure-torch reference operations. Each Triton kernel in csrc_triton/ implements
the same signature and is tested against the function here."""
