//! Reading rows by id — the hot reads of presign, resolve and download — through the server's read
//! lane when there is one ([`crate::db::read_lane`]: no test round trip after each query; single
//! rows coalesced, [`super::coalesce`]), else through the pool.

use super::model::MediaRow;
use super::sql::COLUMNS;
use super::MediaRepo;
use crate::db::{Database, DbError};

impl MediaRepo {
    /// Closes the read lane's idle connections (at shutdown, beside the pool's).
    pub async fn close_read_lane(&self) {
        if let Some(reads) = &self.read_lane {
            reads.lane().close().await;
        }
    }

    /// The read lane's connections in use and idle, and its size (`None` without a lane).
    pub fn read_lane_stats(&self) -> Option<(u32, usize, u32)> {
        self.read_lane.as_ref().map(|reads| reads.lane().stats())
    }

    /// What the read lane's statements for single rows did (`None` without a lane).
    pub fn coalesced_reads(&self) -> Option<super::ReadCounts> {
        self.read_lane.as_ref().map(|reads| reads.counts())
    }

    /// Reads of single rows waiting in the read lane's queue (0 without a lane).
    pub fn queued_reads(&self) -> usize {
        self.read_lane.as_ref().map_or(0, |reads| reads.queued())
    }

    /// The row of `tenant`'s `id`, still sealed.
    pub(super) async fn row_by_id(&self, tenant: &str, id: &str) -> Result<Option<MediaRow>, DbError> {
        if let (Database::Postgres(_), Some(reads)) = (&self.db, &self.read_lane) {
            return reads.row(tenant, id).await;
        }
        Ok(crate::with_pool!(&self.db, |pool| sqlx::query_as(super::coalesce::SINGLE.as_str())
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await)?)
    }

    /// The rows of `tenant` among `ids`, still sealed, in one query.
    pub(super) async fn rows_by_ids(&self, tenant: &str, ids: &[String]) -> Result<Vec<MediaRow>, DbError> {
        Ok(match &self.db {
            Database::Postgres(pool) => {
                let sql = format!("SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND id = ANY($2)");
                let query = sqlx::query_as(&sql).bind(tenant).bind(ids);
                match &self.read_lane {
                    Some(reads) => {
                        let mut lease = reads.lane().acquire().await?;
                        let rows = query.fetch_all(lease.conn()).await?;
                        lease.done();
                        rows
                    }
                    None => query.fetch_all(pool).await?,
                }
            }
            Database::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND id IN (SELECT value FROM json_each($2))"
                );
                let list = serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query_as(&sql).bind(tenant).bind(list).fetch_all(pool).await?
            }
        })
    }
}
