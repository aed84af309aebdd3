"""Train the project's own small model: a Llama that must read its context to answer
synthetic Text2JSON and multi-needle prompts (see ``python -m vllm_kvoffload.training --help``).

Only torch is needed to train (the GPU machine has no vLLM, transformers or tokenizers);
``export`` turns a checkpoint into a Hugging Face folder that vLLM loads.
"""
