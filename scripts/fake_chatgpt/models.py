"""The `/backend-api/codex/models` catalogue.

Entries follow the `ModelInfo` shape Codex 0.169.0 parses (the same keys as the catalogue
bundled inside the 0.169.0 binary), trimmed to small values: no long instruction templates.
`tool_mode: null` / `use_responses_lite: false` keep the classic tool set (`exec_command`, ...)
that the recorded fixtures show.
"""

from __future__ import annotations

import copy

DEFAULT_MODEL = "gpt-5.1-codex"

ALL_PLANS = [
    "business", "edu", "education", "enterprise", "free", "go", "plus", "pro", "prolite", "team",
]

_REASONING_LEVELS = [
    {"effort": "low", "description": "Fast responses with lighter reasoning"},
    {"effort": "medium", "description": "Balances speed and reasoning depth for everyday tasks"},
    {"effort": "high", "description": "Greater reasoning depth for complex problems"},
]

BASE_INSTRUCTIONS = (
    "You are Codex, a coding agent running against a simulated ChatGPT backend (fake_chatgpt). "
    "Answer briefly. Use the shell tool when asked to run a command."
)


def _entry(slug: str, display: str, description: str, priority: int, shell_type: str) -> dict:
    return {
        "slug": slug,
        "display_name": display,
        "description": description,
        "default_reasoning_level": "medium",
        "supported_reasoning_levels": copy.deepcopy(_REASONING_LEVELS),
        "default_reasoning_summary": "auto",
        "shell_type": shell_type,
        "visibility": "list",
        "minimal_client_version": "0.98.0",
        "supported_in_api": True,
        "availability_nux": None,
        "upgrade": None,
        "priority": priority,
        "base_instructions": BASE_INSTRUCTIONS,
        "model_messages": None,
        "supports_reasoning_summaries": True,
        "supports_reasoning_summary_parameter": True,
        "support_verbosity": False,
        "default_verbosity": None,
        "apply_patch_tool_type": "freeform",
        "web_search_tool_type": "text",
        "truncation_policy": {"mode": "tokens", "limit": 10000},
        "supports_parallel_tool_calls": True,
        "supports_image_detail_original": False,
        "supports_search_tool": False,
        "supports_experimental_context": False,
        "supports_reasoning_effort_updates": False,
        "context_window": 272000,
        "max_context_window": 272000,
        "auto_compact_token_limit": None,
        "effective_context_window_percent": 95,
        "experimental_supported_tools": [],
        "input_modalities": ["text", "image"],
        "prefer_websockets": True,
        "tool_mode": None,
        "multi_agent_version": None,
        "multi_agent_reasoning_effort": None,
        "use_responses_lite": False,
        "include_skills_usage_instructions": True,
        "include_apps_usage_instructions": True,
        "include_plugin_usage_instructions": True,
        "guardian": None,
        "node_repl_auto_review_required": False,
        "node_repl_disabled": False,
        "requires_sandboxed_review": False,
        "auto_review_model_override": None,
        "model_specialty": None,
        "available_in_plans": list(ALL_PLANS),
        "default_service_tier": None,
        "service_tiers": [],
        "additional_speed_tiers": [],
    }


def catalogue() -> dict:
    """A fresh copy of the catalogue (callers may mutate it)."""
    return {
        "models": [
            _entry(
                DEFAULT_MODEL,
                "GPT-5.1-Codex",
                "Simulated Codex model served by fake_chatgpt.",
                1,
                "unified_exec",
            ),
            _entry(
                "gpt-5.1-codex-mini",
                "GPT-5.1-Codex-Mini",
                "Smaller simulated Codex model served by fake_chatgpt.",
                2,
                "unified_exec",
            ),
        ]
    }


def slugs() -> frozenset[str]:
    """The model names `/codex/responses` serves (anything else: the `model` rule, rules.py)."""
    return frozenset(m["slug"] for m in catalogue()["models"])
