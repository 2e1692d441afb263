//! Template categories: the shelves templates are filed on, ordered by `position`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TemplateCategories::Table)
                    .col(string(TemplateCategories::Id).primary_key())
                    .col(string(TemplateCategories::Slug).unique_key())
                    .col(string(TemplateCategories::Name))
                    .col(text_null(TemplateCategories::Description))
                    .col(integer(TemplateCategories::Position))
                    .col(timestamp_with_time_zone(TemplateCategories::CreatedAt))
                    .col(timestamp_with_time_zone(TemplateCategories::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(TemplateCategories::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum TemplateCategories {
    Table,
    Id,
    Slug,
    Name,
    Description,
    Position,
    CreatedAt,
    UpdatedAt,
}
