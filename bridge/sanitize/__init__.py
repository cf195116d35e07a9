"""Sanitization engine (pure core): policies, Crypto-PAn, the batch rewriter, offline tools."""

from bridge.sanitize.engine import PcapRecordError, SanitizeResult, Sanitizer
from bridge.sanitize.policy import Policy, PolicyError, load_policy, policy_from_flags

__all__ = ["PcapRecordError", "Policy", "PolicyError", "SanitizeResult", "Sanitizer", "load_policy", "policy_from_flags"]
