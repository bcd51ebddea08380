"""Customer questions entering the system (HTTP intake, Slack channel, CSV import).

Drafting and review-card posting are added by the bot; here questions are stored in one
transaction, with a provided draft when the source had one.
"""

from __future__ import annotations

from replyloop.config import Config
from replyloop.dataio import QuestionIn
from replyloop.store import Store


def ingest_questions(config: Config, store: Store, questions: list[QuestionIn], source: str) -> list[int]:
    """Store questions (and any drafts they carry) all or nothing; returns the question ids."""
    ids = []
    with store.transaction():
        for q in questions:
            qid = store.add_question(q.question, q.conversation_id, q.category, source=source)
            if q.draft:
                store.add_draft(qid, q.draft, model_name="external")
            ids.append(qid)
    return ids
