"""signing keys are published before they sign

Revision ID: 0009_signing_key_publication
Revises: 0008_pro_sante_connect
Create Date: 2026-12-06 04:05:00
"""
from alembic import op
import sqlalchemy as sa
import portal.db


revision = '0009_signing_key_publication'
down_revision = '0008_pro_sante_connect'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('oidc_signing_keys', sa.Column('signs_from', portal.db.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('oidc_signing_keys') as batch:
        batch.drop_column('signs_from')
