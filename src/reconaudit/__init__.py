"""reconaudit: audit medical image reconstruction by what it does downstream.

The package is organised in rooms (see README and docs/architecture.md):

- :mod:`reconaudit.cohorts`  studies, targets, groups, splits (synthetic and real layouts)
- :mod:`reconaudit.physics`  simulated acquisitions (low-dose X-ray, undersampled MRI, masking)
- :mod:`reconaudit.recon`    reconstructors behind one interface
- :mod:`reconaudit.tasks`    diagnostic models trained on clean images
- :mod:`reconaudit.metrics`  image quality, task, fairness metrics and statistics (pure arrays)
- :mod:`reconaudit.mitigation` fairness-aware reconstruction training
- :mod:`reconaudit.engine`   config, plan, artifact store, executors, records
- :mod:`reconaudit.report`   tables, figures, HTML report from the records alone
"""

__version__ = "0.1.0"
