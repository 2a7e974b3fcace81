"""Training: the pretrain stage (``pretrain``: pack, launch DeepSpeed, export), the training
process it launches (``worker``), token packing (``packing``), multi-node launch helpers
(``launch``), vocabulary extension (``vocab``) and base models (``models``).

Nothing is imported here, so ``pipeline.stages.models`` loads without torch.
"""
