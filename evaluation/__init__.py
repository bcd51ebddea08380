"""Evaluation: policy rules engine, embedding consistency, promotion gate, weekly report.

Submodules are imported on demand (``from evaluation.policy import load_policies``); this
package imports nothing heavy.
"""
