"""The steps of a domain run, one package each: ``ingest``, ``models`` (the base model converted
once), ``tokenizer``, ``pretrain``, ``control`` (the base model trained on general text only),
``finetune`` and ``evaluate``. Each has its ``run(config, inputs, out_dir) -> Manifest`` and a
reader of its output."""
