//! Long work shared by the server and the admin commands, as library code: the retention
//! [`sweep`]er (also run in the background by the server), key [`rotate`]-ion and the moving of
//! [`objects`] to new keys (with its [`progress`] output), tenant [`shred`]ding,
//! the [`reconcile`] pass that deletes objects nothing references, and the [`removal`] of rows and
//! objects that the delete use case and the sweeper share.
//! Each takes the parts it works on (opened by `services.rs`) and reports what it did.

pub mod objects;
pub(crate) mod progress;
pub mod reconcile;
pub mod removal;
pub mod rotate;
pub mod shred;
pub mod sweep;
