"""calm-merge: CALM (Consensus-Aware Localized Merging, ICML 2025) and its baselines."""
__version__ = "0.1.0"
