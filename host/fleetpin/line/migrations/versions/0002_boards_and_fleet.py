"""Shared registry: the `bundles` boards were provisioned with, per fleet (late 0.1 files have
that table already: it is kept); one `boards` row per MAC (the claim: claimed -> written -> confirmed, or
failed), the fleet's `devices`, their deduplicated `reports` and the `mismatch_counts` per host
kept with them, and the `lockouts` a preflight (per bundle digest) or a drill (per scenario)
found. Backfills `boards` from the attempts a 0.1 registry recorded (the last attempt of each MAC
decides: provisioned/already-provisioned -> confirmed, failed -> failed).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


def upgrade() -> None:
    op.create_index("attempts_image", "attempts", ["image_id", "result"])
    if not sa.inspect(op.get_bind()).has_table("bundles"):  # a registry file of late 0.1 has it already
        op.create_table(
            "bundles",
            sa.Column("fleet", sa.Text, primary_key=True),
            sa.Column("sha256", sa.Text, primary_key=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("first_seen", sa.Float, nullable=False),
        )
    boards = op.create_table(
        "boards",
        sa.Column("mac", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("board", sa.Text, nullable=False),
        sa.Column("image_id", sa.Text, nullable=False),
        sa.Column("bundle_sha256", sa.Text, nullable=False),
        sa.Column("station", sa.Text, nullable=False),
        sa.Column("port", sa.Text, nullable=False),
        sa.Column("operator", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("takeovers", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint("state IN ('claimed', 'written', 'confirmed', 'failed')", name="boards_state"),
    )
    op.create_index("boards_image_state", "boards", ["image_id", "state"])
    op.create_index("boards_bundle", "boards", ["bundle_sha256"])
    op.create_table(
        "devices",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("mac", sa.Text),
        sa.Column("fleet", sa.Text),
        sa.Column("bundle_version", sa.Integer),
        sa.Column("bundle_sha256", sa.Text),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("reports_total", sa.Integer),
        sa.Column("reports_dropped", sa.Integer),
    )
    op.create_index("devices_version", "devices", ["bundle_version"])
    op.create_index("devices_last_seen", "devices", ["last_seen"])
    op.create_index("devices_bundle", "devices", ["bundle_sha256"])
    op.create_index("devices_mac", "devices", ["mac"])
    op.create_table(
        "reports",
        sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("report_key", sa.Text, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("hostname", sa.Text),
        sa.Column("port", sa.Integer),
        sa.Column("noted_hostname", sa.Text),
        sa.Column("enforce", sa.Boolean),
        sa.Column("allowed", sa.Boolean),
        sa.Column("validation_result", sa.Text),
        sa.Column("bundle_version", sa.Integer),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("stored_at", sa.Float, nullable=False),
        sa.UniqueConstraint("device_id", "report_key", "first_seen", name="reports_dedup"),
    )
    op.create_index("reports_host_mode", "reports", ["hostname", "enforce", "device_id"])
    op.create_table(  # per host and mode (enforced, report-only, no-rule), the devices that reported it
        "mismatch_counts",
        sa.Column("hostname", sa.Text, primary_key=True),
        sa.Column("mode", sa.Text, primary_key=True),
        sa.Column("devices", sa.Integer, nullable=False),
    )
    op.create_table(
        "lockouts",
        sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("bundle_version", sa.Integer),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("devices", sa.Integer),
        sa.Column("found_at", sa.Float, nullable=False),
        sa.UniqueConstraint("source", "subject", "host", "port", name="lockouts_dedup"),
    )

    # Backfill: the last attempt of each MAC (highest id) decides the board's state.
    attempts = sa.table("attempts", *(sa.column(c) for c in (
        "id", "mac", "board", "image_id", "bundle_sha256", "station", "port", "operator", "started", "ended", "result", "error")))
    last = sa.select(sa.func.max(attempts.c.id)).where(attempts.c.mac.is_not(None)).group_by(attempts.c.mac)
    state = sa.case((attempts.c.result == "failed", sa.literal("failed")), else_=sa.literal("confirmed"))
    token = sa.literal("legacy-") + sa.cast(attempts.c.id, sa.Text)
    op.execute(boards.insert().from_select(
        ["mac", "state", "board", "image_id", "bundle_sha256", "station", "port", "operator", "token", "lease_until",
         "claimed_at", "updated_at", "error"],
        sa.select(attempts.c.mac, state, attempts.c.board, attempts.c.image_id, attempts.c.bundle_sha256, attempts.c.station,
                  attempts.c.port, attempts.c.operator, token, attempts.c.ended, attempts.c.started, attempts.c.ended,
                  attempts.c.error).where(attempts.c.id.in_(last)),
    ))


def downgrade() -> None:
    for t in ("lockouts", "mismatch_counts", "reports", "devices", "boards", "bundles"):
        op.drop_table(t)
    op.drop_index("attempts_image", "attempts")
