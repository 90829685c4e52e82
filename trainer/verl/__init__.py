"""verl integration of the reward service (verl 0.9.x; see ``trainer/verl/README.md``).

- :mod:`trainer.verl.reward_manager`: the ``reward_service`` reward manager of verl's
  reward loop (imports verl);
- :mod:`trainer.verl.routing`: data_source -> domain, verl rows -> service references
  (pure Python);
- :mod:`trainer.verl.scoring`: settings, the service caller, the per-sample extra info;
- :mod:`trainer.verl.overlap`: deferred scoring gathered before the advantage, and the
  ``reward_service_sync`` trainer;
- :mod:`trainer.verl.plugin`: the ``verl.plugins`` entry point that registers both.

Importing this package imports neither verl nor torch.
"""
