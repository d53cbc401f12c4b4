"""ism: experiment and ablation orchestration for improved shortcut models (iSM)."""
__version__ = "0.1.0"
