//! Who is calling: the [`Principal`] built from a verified token's claims, and the permissions its
//! roles and scopes grant.
//!
//! The tenant comes from the claim path `AUTH_TENANT_CLAIM` (dotted, default `tenant_id`), else from
//! `MEDIA_DEFAULT_TENANT`; never from a request body. Roles are read where Keycloak and most OIDC
//! providers put them (`realm_access.roles`, `resource_access.<client>.roles` for the configured
//! clients, `roles`), scopes from `scope` (space separated) or `scp`.
//!
//! Roles and scopes grant apart: a permission's role list (`AUTH_*_ROLES`) is matched only against
//! the token's roles and its scope list (`AUTH_*_SCOPES`) only against its scopes, so a client that
//! can request a scope named like an admin role does not become an admin. Read or write with both
//! lists empty is granted to every valid token, as the jan media-api did; admin only ever by name.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use super::AuthError;
use crate::config::AuthConfig;
use crate::domain::tenant::is_valid_tenant;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Permission {
    /// Read media, presign, resolve.
    #[serde(rename = "media:read")]
    Read,
    /// Upload and delete one's own media.
    #[serde(rename = "media:write")]
    Write,
    /// Delete anyone's media in the tenant.
    #[serde(rename = "media:admin")]
    Admin,
}

impl Permission {
    /// The permission's name (`media:read`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "media:read",
            Self::Write => "media:write",
            Self::Admin => "media:admin",
        }
    }
}

/// An authenticated (or, in `optional`/`disabled` mode, anonymous) caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// The token's `sub` (`anonymous` without a token).
    pub subject: String,
    /// The tenant every query of this request is scoped to.
    pub tenant: String,
    /// The token's issuer (`None` without a token).
    pub issuer: Option<String>,
    /// Roles found in the token.
    pub roles: BTreeSet<String>,
    /// Scopes found in the token.
    pub scopes: BTreeSet<String>,
    /// Permissions granted by the configured role maps.
    #[schema(value_type = Vec<String>, example = json!(["media:read", "media:write"]))]
    pub permissions: BTreeSet<Permission>,
    /// True when no token was presented.
    pub anonymous: bool,
}

impl Principal {
    /// Fails with `insufficient_scope` unless the principal holds `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), AuthError> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope(permission))
        }
    }

    /// Whether the principal holds `permission`.
    pub fn can(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Who owns what this principal uploads: subject and issuer together, so the same `sub` from
    /// two configured issuers is two owners (`["<iss>","<sub>"]`; just the subject without a token).
    pub fn owner(&self) -> String {
        match &self.issuer {
            Some(issuer) => serde_json::json!([issuer, self.subject]).to_string(),
            None => self.subject.clone(),
        }
    }
}

/// How claims become a principal: the configured claim path, default tenant and role maps.
#[derive(Debug, Clone)]
pub struct ClaimsMapping {
    tenant_path: Vec<String>,
    default_tenant: Option<String>,
    client_ids: Vec<String>,
    grants: [Grant; 3],
}

/// The roles and the scopes that grant one permission.
#[derive(Debug, Clone)]
struct Grant {
    permission: Permission,
    roles: Vec<String>,
    scopes: Vec<String>,
}

impl Grant {
    fn new(permission: Permission, roles: &[String], scopes: &[String]) -> Self {
        Self { permission, roles: roles.to_vec(), scopes: scopes.to_vec() }
    }

    /// Granted to every valid token: read or write with no role and no scope configured.
    fn open(&self) -> bool {
        self.permission != Permission::Admin && self.roles.is_empty() && self.scopes.is_empty()
    }

    /// Whether a token with these roles and scopes holds the permission (roles match roles only,
    /// scopes match scopes only).
    fn granted(&self, roles: &BTreeSet<String>, scopes: &BTreeSet<String>) -> bool {
        self.open() || self.roles.iter().any(|r| roles.contains(r)) || self.scopes.iter().any(|s| scopes.contains(s))
    }
}

impl ClaimsMapping {
    /// Reads the mapping from the auth settings.
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            tenant_path: config.tenant_claim.split('.').map(str::to_owned).collect(),
            default_tenant: config.default_tenant.clone(),
            client_ids: config.client_ids.clone(),
            grants: [
                Grant::new(Permission::Read, &config.read_roles, &config.read_scopes),
                Grant::new(Permission::Write, &config.write_roles, &config.write_scopes),
                Grant::new(Permission::Admin, &config.admin_roles, &config.admin_scopes),
            ],
        }
    }

    /// The principal of verified `claims` issued by `issuer`.
    pub fn principal(&self, issuer: &str, claims: &Value) -> Result<Principal, AuthError> {
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= 256 => sub.clone(),
            _ => return Err(AuthError::Claims("the token has no usable `sub` claim")),
        };
        let tenant = self.tenant(claims)?;
        let roles = roles(claims, &self.client_ids);
        let scopes = scopes(claims);
        let permissions = self.permissions(&roles, &scopes);
        Ok(Principal { subject, tenant, issuer: Some(issuer.to_owned()), roles, scopes, permissions, anonymous: false })
    }

    /// The caller without a token (`optional` mode): the default tenant, and the permissions every
    /// valid token would have (never admin).
    pub fn anonymous(&self) -> Option<Principal> {
        let tenant = self.default_tenant.clone()?;
        let permissions = self.grants.iter().filter(|grant| grant.open()).map(|grant| grant.permission).collect();
        Some(Principal {
            subject: "anonymous".into(),
            tenant,
            issuer: None,
            roles: BTreeSet::new(),
            scopes: BTreeSet::new(),
            permissions,
            anonymous: true,
        })
    }

    /// The caller when authentication is disabled: every permission, in the default tenant.
    pub fn unauthenticated(&self) -> Principal {
        Principal {
            subject: "anonymous".into(),
            tenant: self.default_tenant.clone().unwrap_or_else(|| "default".into()),
            issuer: None,
            roles: BTreeSet::new(),
            scopes: BTreeSet::new(),
            permissions: [Permission::Read, Permission::Write, Permission::Admin].into_iter().collect(),
            anonymous: true,
        }
    }

    fn tenant(&self, claims: &Value) -> Result<String, AuthError> {
        let mut value = Some(claims);
        for part in &self.tenant_path {
            value = value.and_then(|v| v.get(part));
        }
        let tenant = match value {
            Some(Value::String(tenant)) => tenant.clone(),
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Null) | None => match &self.default_tenant {
                Some(tenant) => tenant.clone(),
                None => return Err(AuthError::NoTenant),
            },
            Some(_) => return Err(AuthError::InvalidTenant),
        };
        if is_valid_tenant(&tenant) {
            Ok(tenant)
        } else {
            Err(AuthError::InvalidTenant)
        }
    }

    fn permissions(&self, roles: &BTreeSet<String>, scopes: &BTreeSet<String>) -> BTreeSet<Permission> {
        self.grants.iter().filter(|grant| grant.granted(roles, scopes)).map(|grant| grant.permission).collect()
    }
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    value.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned)
}

fn roles(claims: &Value, client_ids: &[String]) -> BTreeSet<String> {
    let mut roles: BTreeSet<String> = strings(claims.pointer("/realm_access/roles")).collect();
    roles.extend(strings(claims.get("roles")));
    if let Some(clients) = claims.get("resource_access") {
        for client in client_ids {
            roles.extend(strings(clients.get(client).and_then(|c| c.get("roles"))));
        }
    }
    roles
}

fn scopes(claims: &Value) -> BTreeSet<String> {
    let mut scopes: BTreeSet<String> = match claims.get("scope") {
        Some(Value::String(scope)) => scope.split_whitespace().map(str::to_owned).collect(),
        _ => BTreeSet::new(),
    };
    match claims.get("scp") {
        Some(Value::String(scp)) => scopes.extend(scp.split_whitespace().map(str::to_owned)),
        other => scopes.extend(strings(other)),
    }
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(vars: &[(&str, &str)]) -> ClaimsMapping {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ClaimsMapping::new(&crate::config::Config::from_vars(&vars).unwrap().auth)
    }

    #[test]
    fn keycloak_roles_of_the_configured_client_only_map_to_permissions() {
        let mapping = mapping(&[
            ("AUTH_AUDIENCE", "media-api"),
            ("AUTH_READ_ROLES", "viewer"),
            ("AUTH_WRITE_ROLES", "uploader,media.write"),
            ("AUTH_ADMIN_ROLES", "media-admin"),
        ]);
        let claims = json!({
            "sub": "u1", "tenant_id": "acme", "typ": "Bearer", "azp": "web",
            "realm_access": {"roles": ["viewer", "offline_access"]},
            "resource_access": {"media-api": {"roles": ["uploader"]}, "other": {"roles": ["media-admin"]}},
            "scope": "openid profile",
        });
        let p = mapping.principal("iss", &claims).unwrap();
        assert_eq!(p.tenant, "acme");
        assert!(p.roles.contains("viewer") && p.roles.contains("uploader"));
        assert!(!p.roles.contains("media-admin"), "roles of another client do not count");
        assert_eq!(p.permissions, [Permission::Read, Permission::Write].into_iter().collect());
        assert!(matches!(p.require(Permission::Admin), Err(AuthError::InsufficientScope(Permission::Admin))));

        let scoped = json!({"sub": "svc", "tenant_id": "acme", "scp": ["media.write"]});
        assert!(!mapping.principal("iss", &scoped).unwrap().can(Permission::Write), "role names never match scopes");
    }

    #[test]
    fn roles_and_scopes_never_grant_each_other_by_a_shared_name() {
        let roles_only = mapping(&[("AUTH_ADMIN_ROLES", "media-admin"), ("AUTH_WRITE_ROLES", "uploader")]);
        let scoped = json!({"sub": "svc", "tenant_id": "t", "scope": "openid media-admin uploader"});
        let p = roles_only.principal("iss", &scoped).unwrap();
        assert!(!p.can(Permission::Admin), "a scope named like an admin role is not admin");
        assert!(!p.can(Permission::Write), "nor a writer");
        assert!(p.can(Permission::Read), "read stays open: no read role or scope is configured");

        let scopes_only = mapping(&[("AUTH_ADMIN_SCOPES", "media-admin"), ("AUTH_WRITE_SCOPES", "media.write")]);
        let p = scopes_only.principal("iss", &scoped).unwrap();
        assert!(p.can(Permission::Admin), "AUTH_ADMIN_SCOPES matches the scope");
        assert!(!p.can(Permission::Write), "write is configured (by scope) and `uploader` is not it");
        let role = json!({"sub": "u", "tenant_id": "t", "roles": ["media-admin", "media.write"]});
        let p = scopes_only.principal("iss", &role).unwrap();
        assert!(!p.can(Permission::Admin) && !p.can(Permission::Write), "a role named like a scope grants nothing");
        let scp = json!({"sub": "svc", "tenant_id": "t", "scp": ["media.write"]});
        assert!(scopes_only.principal("iss", &scp).unwrap().can(Permission::Write), "`scp` arrays count as scopes");

        let both = mapping(&[("AUTH_WRITE_ROLES", "uploader"), ("AUTH_WRITE_SCOPES", "media.write")]);
        for claims in [json!({"roles": ["uploader"]}), json!({"scope": "media.write"})] {
            let mut claims = claims;
            claims["sub"] = json!("u");
            claims["tenant_id"] = json!("t");
            assert!(both.principal("iss", &claims).unwrap().can(Permission::Write), "either list grants: {claims}");
        }
        let only_scope_configured = mapping(&[("MEDIA_DEFAULT_TENANT", "main"), ("AUTH_WRITE_SCOPES", "media.write")]);
        let anonymous = only_scope_configured.anonymous().unwrap();
        assert_eq!(anonymous.permissions, [Permission::Read].into_iter().collect(), "write is no longer open");
    }

    #[test]
    fn empty_role_maps_grant_read_and_write_to_every_valid_token_and_admin_to_none() {
        let p =
            mapping(&[]).principal("iss", &json!({"sub": "u", "tenant_id": "t", "roles": ["media-admin"]})).unwrap();
        assert_eq!(p.permissions, [Permission::Read, Permission::Write].into_iter().collect());
        assert!(!p.can(Permission::Admin), "admin is only ever granted by name");
    }

    #[test]
    fn the_tenant_comes_from_a_dotted_path_or_the_default_and_is_validated() {
        let nested = mapping(&[("AUTH_TENANT_CLAIM", "org.id")]);
        assert_eq!(nested.principal("i", &json!({"sub": "u", "org": {"id": "t-1"}})).unwrap().tenant, "t-1");
        assert!(matches!(nested.principal("i", &json!({"sub": "u", "tenant_id": "x"})), Err(AuthError::NoTenant)));
        let fallback = mapping(&[("MEDIA_DEFAULT_TENANT", "main")]);
        assert_eq!(fallback.principal("i", &json!({"sub": "u"})).unwrap().tenant, "main");
        for bad in [json!("../etc"), json!("a b"), json!(""), json!("x".repeat(129)), json!(["t"])] {
            let claims = json!({"sub": "u", "tenant_id": bad});
            assert!(matches!(fallback.principal("i", &claims), Err(AuthError::InvalidTenant)), "{claims}");
        }
        assert!(matches!(fallback.principal("i", &json!({"tenant_id": "t"})), Err(AuthError::Claims(_))));
    }

    #[test]
    fn anonymous_callers_get_the_open_permissions_but_never_admin() {
        assert!(mapping(&[]).anonymous().is_none(), "no default tenant, no anonymous principal");
        let open = mapping(&[("MEDIA_DEFAULT_TENANT", "main"), ("AUTH_WRITE_ROLES", "uploader")]);
        let p = open.anonymous().unwrap();
        assert_eq!(p.permissions, [Permission::Read].into_iter().collect());
        assert!(p.anonymous);
        let from_a = mapping(&[]).principal("https://a", &json!({"sub": "alice", "tenant_id": "t"})).unwrap();
        let from_b = mapping(&[]).principal("https://b", &json!({"sub": "alice", "tenant_id": "t"})).unwrap();
        assert_ne!(from_a.owner(), from_b.owner(), "one sub from two issuers is two owners");
    }
}
