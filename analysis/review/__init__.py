"""Team review of merge decisions: an append-only store of proposals, comments and decisions.

`propose(store, recipe, title, author)` opens a proposal for a merge recipe; `ReviewStore` adds
comments and decisions and reads the history back; `analysis.review.reports` renders the offline
HTML report and the Markdown summary. The status of a proposal is derived from its events.
"""
from analysis.recipe_contract import RecipeContract, validate_recipe
from analysis.review.models import (
                                    DECISIONS,
                                    OPEN,
                                    SCHEMA_VERSION,
                                    Event,
                                    InputRecord,
                                    Proposal,
                                    ProposalSummary,
                                    derive_status,
)
from analysis.review.propose import propose, read_recipe
from analysis.review.store import ENV_VAR, ReviewStore, default_db_path, resolve_db_url

__all__ = [
    "DECISIONS", "ENV_VAR", "OPEN", "SCHEMA_VERSION", "Event", "InputRecord", "Proposal", "ProposalSummary",
    "RecipeContract", "ReviewStore", "default_db_path", "derive_status", "propose", "read_recipe", "resolve_db_url",
    "validate_recipe",
]
