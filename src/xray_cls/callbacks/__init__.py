"""Every Lightning callback of the framework. The module's steps hand them logits as
:class:`xray_cls.module.StepOutput`.

- :mod:`.operating_point`: chooses the binary operating threshold on validation data, tests at it.
- :mod:`.outputs`: collects the test outputs the report draws.
- :mod:`.confusion_matrix`: confusion matrices in TensorBoard.
- :mod:`.finetune`: freezes and unfreezes a backbone (``model.finetune.mode``).
- :mod:`.run_config`: writes the run's config into every checkpoint.
"""
