"""The registry as fleetpin 0.1 left it (its single SQLite module): one `attempts` row per
provisioning attempt. A database made by that code has this table and index (late 0.1 added a
`bundles` table too, which 0002 keeps) and no alembic_version table: migrate() stamps it at this
revision, then upgrades.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("mac", sa.Text),
        sa.Column("board", sa.Text, nullable=False),
        sa.Column("image_id", sa.Text, nullable=False),
        sa.Column("bundle_sha256", sa.Text, nullable=False),
        sa.Column("station", sa.Text, nullable=False),
        sa.Column("port", sa.Text, nullable=False),
        sa.Column("operator", sa.Text, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("ended", sa.Float, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("attempts_mac", "attempts", ["mac"])


def downgrade() -> None:
    op.drop_index("attempts_mac", "attempts")
    op.drop_table("attempts")
