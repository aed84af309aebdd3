"""Pure-torch reference operations. Each Triton kernel in csrc_triton/ implements
the same signature and is tested against the function here."""


def batched_ops(cuda: bool):
    """The batched decode operations (score_mass, topk_select, gather_uva, gather_inplace,
    gather_lru, sparse_decode): the Triton kernels on GPU, these torch references otherwise (CPU tests)."""
    if cuda:
        from vllm_kvoffload.ops import triton_kernels

        return triton_kernels
    from types import SimpleNamespace

    from vllm_kvoffload.ops.gather_inplace_ref import gather_inplace_ref
    from vllm_kvoffload.ops.gather_lru_ref import gather_lru_ref
    from vllm_kvoffload.ops.gather_ref import gather_ref
    from vllm_kvoffload.ops.score_ref import score_mass_ref
    from vllm_kvoffload.ops.sparse_decode_ref import sparse_decode_ref
    from vllm_kvoffload.ops.topk_ref import topk_ref

    def sparse_decode(*args, out=None, **kwargs):
        result = sparse_decode_ref(*args, **kwargs)
        return result if out is None else out.copy_(result)

    return SimpleNamespace(score_mass=score_mass_ref, topk_select=topk_ref,
                           gather_uva=gather_ref,
                           gather_inplace=gather_inplace_ref,
                           gather_lru=gather_lru_ref,
                           sparse_decode=sparse_decode)
