"""The steps of a domain run, in order (each one's spec lives beside its stage). The planner
(``pipeline.engine.plan``) keeps the enabled ones; a step a domain does not use (the general
text's ingest and the control without general sources, the base model when training from
scratch) is not in its plan."""

from pipeline.engine.plan import StepSpec
from pipeline.stages.control.spec import SPEC as CONTROL
from pipeline.stages.evaluate.spec import SPEC as EVALUATE
from pipeline.stages.finetune.spec import SPEC as FINETUNE
from pipeline.stages.general.spec import SPEC as GENERAL
from pipeline.stages.ingest.spec import SPEC as INGEST
from pipeline.stages.models.spec import SPEC as MODELS
from pipeline.stages.pretrain.spec import SPEC as PRETRAIN
from pipeline.stages.tokenizer.spec import SPEC as TOKENIZER

STEPS: list[StepSpec] = [INGEST, MODELS, TOKENIZER, PRETRAIN, GENERAL, CONTROL, FINETUNE,
                         EVALUATE]
