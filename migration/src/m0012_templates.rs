//! Templates and their immutable versions: every save appends a `template_versions` row; the
//! `templates` row holds what is not versioned (owner, sharing, category, name) and the current
//! version number.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Templates::Table)
                    .col(string(Templates::Id).primary_key())
                    .col(string_null(Templates::OwnerId))
                    .col(string_null(Templates::TeamId))
                    .col(string(Templates::Kind))
                    .col(string_null(Templates::CategoryId))
                    .col(string(Templates::Name))
                    .col(string(Templates::Slug).unique_key())
                    .col(text_null(Templates::Description))
                    .col(string(Templates::Visibility))
                    .col(integer(Templates::Version))
                    .col(boolean(Templates::IsStarter))
                    .col(string_null(Templates::StarterDigest))
                    .col(string_null(Templates::ForkedFromId))
                    .col(integer_null(Templates::ForkedFromVersion))
                    .col(timestamp_with_time_zone(Templates::CreatedAt))
                    .col(timestamp_with_time_zone(Templates::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_templates_category")
                            .from(Templates::Table, Templates::CategoryId)
                            .to(TemplateCategories::Table, TemplateCategories::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_templates_team")
                            .from(Templates::Table, Templates::TeamId)
                            .to(Teams::Table, Teams::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_templates_owner", Templates::OwnerId),
            ("idx_templates_team", Templates::TeamId),
            ("idx_templates_category", Templates::CategoryId),
        ] {
            manager.create_index(Index::create().name(name).table(Templates::Table).col(column).to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(TemplateVersions::Table)
                    .col(string(TemplateVersions::TemplateId))
                    .col(integer(TemplateVersions::Version))
                    .col(json(TemplateVersions::Body))
                    .col(json(TemplateVersions::Variables))
                    .col(text_null(TemplateVersions::Changelog))
                    .col(string_null(TemplateVersions::AuthorId))
                    .col(timestamp_with_time_zone(TemplateVersions::CreatedAt))
                    .primary_key(Index::create().col(TemplateVersions::TemplateId).col(TemplateVersions::Version))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_template_versions_template")
                            .from(TemplateVersions::Table, TemplateVersions::TemplateId)
                            .to(Templates::Table, Templates::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(TemplateVersions::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Templates::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Templates {
    Table,
    Id,
    OwnerId,
    TeamId,
    Kind,
    CategoryId,
    Name,
    Slug,
    Description,
    Visibility,
    Version,
    IsStarter,
    StarterDigest,
    ForkedFromId,
    ForkedFromVersion,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TemplateVersions {
    Table,
    TemplateId,
    Version,
    Body,
    Variables,
    Changelog,
    AuthorId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TemplateCategories {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Teams {
    Table,
    Id,
}
