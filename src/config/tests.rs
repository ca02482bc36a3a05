//! Unit tests of the configuration: defaults, refusals naming the variable, secrets never shown.

use super::*;

fn master_keys() -> String {
    format!("k1:{}", fernet::Fernet::generate_key())
}

#[test]
fn malformed_keys_are_refused_at_start_naming_the_variable() {
    let err = Config::from_vars(&vars(&[("MEDIA_MASTER_KEYS", "k1:not-a-fernet-key")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_MASTER_KEYS");
    assert!(!err.to_string().contains("not-a-fernet-key"), "the secret is not echoed: {err}");
    let err = Config::from_vars(&vars(&[("MEDIA_FS_SIGNING_KEY", "short")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_FS_SIGNING_KEY");
}

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn empty_environment_gives_the_embedded_dev_setup() {
    let config = Config::from_vars(&HashMap::new()).expect("dev defaults are valid");
    assert_eq!(config.profile, Profile::Dev);
    assert_eq!(config.port, 8285);
    assert_eq!(config.max_bytes, 20 * MIB);
    assert_eq!(config.presign_ttl, Duration::from_secs(300));
    assert!(config.database.url.expose_secret().starts_with("sqlite://"));
    assert!(matches!(config.storage, StorageConfig::Filesystem(_)));
    assert!(matches!(config.keyring, KeyringSource::DevGenerated));
}

#[test]
fn a_bad_number_names_the_variable() {
    let err = Config::from_vars(&vars(&[("MEDIA_MAX_BYTES", "abc")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_MAX_BYTES");
    assert!(err.to_string().contains("\"abc\""), "{err}");
}

#[test]
fn production_names_every_missing_setting_in_one_line() {
    let err = Config::from_vars(&vars(&[("MEDIA_PROFILE", "production")])).unwrap_err();
    let line = err.to_string();
    for name in ["AUTH_ISSUER", "AUTH_AUDIENCE", "MEDIA_MASTER_KEYS", "MEDIA_DATABASE_URL", "MEDIA_S3_BUCKET"] {
        assert!(line.contains(name), "{name} missing from: {line}");
    }
    assert!(!line.contains('\n'));
}

#[test]
fn production_refuses_disabled_auth_even_when_everything_else_is_set() {
    let err = Config::from_vars(&vars(&[
        ("MEDIA_PROFILE", "production"),
        ("AUTH_ENABLED", "false"),
        ("AUTH_ISSUER", "https://id.example.com/realms/jan"),
        ("AUTH_AUDIENCE", "media-api"),
        ("MEDIA_MASTER_KEYS", &master_keys()),
        ("MEDIA_DATABASE_URL", "postgres://db/media"),
        ("MEDIA_S3_BUCKET", "media"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("authentication cannot be disabled"), "{err}");
}

#[test]
fn production_with_everything_explicit_is_accepted() {
    let keys = master_keys();
    let config = Config::from_vars(&vars(&[
        ("MEDIA_PROFILE", "production"),
        ("AUTH_ISSUER", "https://a.example.com, https://b.example.com"),
        ("AUTH_ISSUER_TENANTS", "https://a.example.com=acme;https://b.example.com=globex-*"),
        ("AUTH_AUDIENCE", "media-api"),
        ("MEDIA_MASTER_KEYS", &keys),
        ("MEDIA_DATABASE_URL", "postgres://user:pw@db/media"),
        ("MEDIA_S3_BUCKET", "media"),
        ("MEDIA_S3_ENDPOINT", "http://garage:3900"),
        ("MEDIA_S3_ACCESS_KEY", "GK1"),
        ("MEDIA_S3_SECRET_KEY", "s3cr3t"),
    ]))
    .expect("valid production config");
    assert_eq!(config.auth.issuers.len(), 2);
    let StorageConfig::S3(s3) = &config.storage else { panic!("expected s3") };
    assert!(s3.path_style, "path style defaults on with a custom endpoint");
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cr3t") && !debug.contains(":pw@") && !debug.contains(&keys), "{debug}");
    assert_eq!(config.database_url_for_logs(), "postgres://db/media");
}

#[test]
fn auth_settings_are_checked_and_defaulted() {
    let config = Config::from_vars(&HashMap::new()).unwrap();
    assert_eq!(config.auth.algorithms, DEFAULT_ALGORITHMS.to_vec());
    assert_eq!((config.auth.audiences.as_slice(), config.auth.dev_issuer), (&[DEV_AUDIENCE.to_owned()][..], true));
    assert_eq!(config.auth.leeway, Duration::from_secs(60));
    for (name, value) in [
        ("AUTH_ALGORITHMS", "RS256,HS256"),
        ("AUTH_ALGORITHMS", "none"),
        ("AUTH_MODE", "sometimes"),
        ("AUTH_LEEWAY", "soon"),
        ("MEDIA_DEFAULT_TENANT", "../etc"),
    ] {
        let err = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
        assert_eq!(err.var, name, "{err}");
    }
    let mismatched = vars(&[("AUTH_ISSUER", "a,b,c"), ("AUTH_JWKS_URL", "http://x/1,http://x/2")]);
    assert_eq!(Config::from_vars(&mismatched).unwrap_err().var, "AUTH_JWKS_URL");
    let orphan = vars(&[("AUTH_JWKS_URL", "http://x/1")]);
    assert_eq!(Config::from_vars(&orphan).unwrap_err().var, "AUTH_JWKS_URL");
    let nobody = vars(&[("AUTH_DEV_ISSUER", "false")]);
    assert_eq!(Config::from_vars(&nobody).unwrap_err().var, "AUTH_ISSUER", "no issuer at all is refused");
    let jan = Config::from_vars(&vars(&[("AUTH_ENABLED", "false")])).unwrap();
    assert_eq!(jan.auth.mode, AuthMode::Disabled, "AUTH_ENABLED=false is jan's way to disable auth");
    let production = Config::from_vars(&vars(&[("MEDIA_PROFILE", "production"), ("AUTH_DEV_ISSUER", "true")]));
    assert!(production.unwrap_err().to_string().contains("AUTH_DEV_ISSUER"));
}

#[test]
fn the_dev_issuer_is_trusted_in_dev_only_without_a_real_issuer_or_when_asked_for() {
    assert!(Config::from_vars(&HashMap::new()).unwrap().auth.dev_issuer, "dev, no AUTH_ISSUER: on");
    let real = vars(&[("AUTH_ISSUER", "https://a.example")]);
    assert!(!Config::from_vars(&real).unwrap().auth.dev_issuer, "dev with a real issuer: off");
    let asked = vars(&[("AUTH_ISSUER", "https://a.example"), ("AUTH_DEV_ISSUER", "true")]);
    assert!(Config::from_vars(&asked).unwrap().auth.dev_issuer, "explicit AUTH_DEV_ISSUER=true: on");
}

#[test]
fn issuer_tenants_are_parsed_checked_and_required_for_several_issuers_in_production() {
    let two = "https://a.example,https://b.example";
    let bound = vars(&[("AUTH_ISSUER", two), ("AUTH_ISSUER_TENANTS", "https://a.example=acme;https://b.example=b-*")]);
    let binding = Config::from_vars(&bound).unwrap().auth.issuer_tenants.expect("a binding");
    assert!(binding.allows("https://b.example", "b-1") && !binding.allows("https://b.example", "acme"));
    assert!(Config::from_vars(&vars(&[("AUTH_ISSUER", two)])).unwrap().auth.issuer_tenants.is_none(), "dev: optional");
    for bad in ["https://a.example", "https://a.example=acme", "https://a.example=acme;https://c.example=c"] {
        let err = Config::from_vars(&vars(&[("AUTH_ISSUER", two), ("AUTH_ISSUER_TENANTS", bad)])).unwrap_err();
        assert_eq!(err.var, "AUTH_ISSUER_TENANTS", "{bad}: {err}");
    }
    let keys = master_keys();
    let production = |extra: &[(&str, &str)]| {
        let mut all = vec![
            ("MEDIA_PROFILE", "production"),
            ("AUTH_ISSUER", two),
            ("AUTH_AUDIENCE", "media-api"),
            ("MEDIA_MASTER_KEYS", keys.as_str()),
            ("MEDIA_DATABASE_URL", "postgres://db/media"),
            ("MEDIA_S3_BUCKET", "media"),
        ];
        all.extend_from_slice(extra);
        Config::from_vars(&vars(&all))
    };
    let err = production(&[]).unwrap_err();
    assert!(err.to_string().contains("AUTH_ISSUER_TENANTS is not set"), "{err}");
    assert!(production(&[("AUTH_ISSUER_TENANTS", "https://a.example=*;https://b.example=globex")]).is_ok());
}

#[test]
fn half_a_credential_pair_is_refused() {
    let err = Config::from_vars(&vars(&[("MEDIA_S3_BUCKET", "b"), ("MEDIA_S3_ACCESS_KEY_ID", "GK1")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_S3_ACCESS_KEY");
}

#[test]
fn durations_and_sizes_parse_like_go_and_humans_write_them() {
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
    assert_eq!(parse_duration("m"), None);
    assert_eq!(parse_duration("5 minutes"), None);
    assert_eq!(parse_size("20MiB"), Some(20 * MIB));
    assert_eq!(parse_size("1000"), Some(1000));
    assert_eq!(parse_size("-1"), None);
    assert_eq!(parse_size("abc"), None);
}

#[test]
fn a_part_size_outside_the_s3_limits_is_refused() {
    let with = |size: &str| Config::from_vars(&vars(&[("MEDIA_S3_BUCKET", "b"), ("MEDIA_S3_PART_SIZE", size)]));
    for refused in ["4MiB", "5121MiB", "1000GB"] {
        let err = with(refused).expect_err(refused);
        assert_eq!(err.var, "MEDIA_S3_PART_SIZE", "{refused}");
        assert!(err.to_string().contains("between 5 MiB and 5 GiB"), "{err}");
    }
    for taken in ["5MiB", "5120MiB"] {
        match with(taken).expect(taken).storage {
            StorageConfig::S3(s3) => assert_eq!(s3.part_size, parse_size(taken).expect("a size")),
            other => panic!("{taken}: S3 expected, got {other:?}"),
        }
    }
}

#[test]
fn a_limit_that_would_need_more_parts_than_an_upload_has_names_the_part_size_it_needs() {
    let with = |max: &str, part: &str| {
        Config::from_vars(&vars(&[("MEDIA_S3_BUCKET", "b"), ("MEDIA_MAX_BYTES", max), ("MEDIA_S3_PART_SIZE", part)]))
    };
    // 5000 parts of 5 MiB hold 24.4 GiB: 24 GiB fits, encryption's overhead included; 25 GiB does not.
    with("24GiB", "5MiB").expect("24 GiB in 5 MiB parts");
    let err = with("25GiB", "5MiB").expect_err("25 GiB in 5 MiB parts");
    assert_eq!(err.var, "MEDIA_S3_PART_SIZE");
    assert!(err.to_string().contains("at most 5000 parts; set it to at least 6MiB"), "{err}");
    with("25GiB", "6MiB").expect("the size it names is taken");
    let err = with("30720GiB", "5120MiB").expect_err("30 TiB: more than 5000 parts of the largest size");
    assert!(err.to_string().contains("no part size is large enough: lower MEDIA_MAX_BYTES"), "{err}");
    // The filesystem store has no parts.
    Config::from_vars(&vars(&[("MEDIA_MAX_BYTES", "1024GiB")])).expect("no parts without S3");
}

#[test]
fn chunked_puts_default_to_asking_the_store_and_take_auto_true_or_false() {
    let with = |value: Option<&str>| {
        let mut set = vec![("MEDIA_S3_BUCKET", "b")];
        set.extend(value.map(|v| ("MEDIA_S3_CHUNKED_PUT", v)));
        Config::from_vars(&vars(&set))
    };
    let cases = [(None, ChunkedPut::Auto), (Some("AUTO"), ChunkedPut::Auto), (Some("true"), ChunkedPut::Always)];
    for (given, expected) in cases.into_iter().chain([(Some("off"), ChunkedPut::Never)]) {
        match with(given).expect("accepted").storage {
            StorageConfig::S3(s3) => assert_eq!(s3.chunked_put, expected, "{given:?}"),
            other => panic!("S3 expected, got {other:?}"),
        }
    }
    let err = with(Some("sometimes")).expect_err("refused");
    assert_eq!(err.var, "MEDIA_S3_CHUNKED_PUT");
    assert!(err.to_string().contains("auto, true or false"), "{err}");
}

#[test]
fn the_s3_read_timeout_defaults_to_a_minute_and_is_bounded() {
    let with = |value: Option<&str>| {
        let mut set = vec![("MEDIA_S3_BUCKET", "b")];
        set.extend(value.map(|v| ("MEDIA_S3_READ_TIMEOUT", v)));
        Config::from_vars(&vars(&set))
    };
    for (given, expected) in [(None, 60), (Some("1s"), 1), (Some("2m"), 120), (Some("10m"), 600)] {
        match with(given).expect("accepted").storage {
            StorageConfig::S3(s3) => assert_eq!(s3.read_timeout, Duration::from_secs(expected), "{given:?}"),
            other => panic!("{given:?}: S3 expected, got {other:?}"),
        }
    }
    for refused in ["0s", "11m", "soon"] {
        let err = with(Some(refused)).expect_err(refused);
        assert_eq!(err.var, "MEDIA_S3_READ_TIMEOUT", "{refused}");
    }
    assert!(with(Some("0s")).unwrap_err().to_string().contains("between 1s and 10m"));
}

#[test]
fn presign_ttl_above_the_cap_is_refused() {
    let err = Config::from_vars(&vars(&[("MEDIA_S3_PRESIGN_TTL", "2h")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_S3_PRESIGN_TTL");
}

#[test]
fn the_redis_url_is_optional_checked_and_its_password_never_shown() {
    assert!(Config::from_vars(&HashMap::new()).unwrap().ops.redis.is_none(), "limits are per replica by default");
    let config = Config::from_vars(&vars(&[("MEDIA_REDIS_URL", "redis://:s3cret-pw@redis:6379/2")])).unwrap();
    let redis = config.ops.redis.expect("shared limits");
    assert_eq!(redis.timeout, Duration::from_millis(100));
    assert!(!format!("{redis:?} {}", redis.url_for_logs()).contains("s3cret-pw"));
    let err = Config::from_vars(&vars(&[("MEDIA_REDIS_URL", "http://:s3cret-pw@redis:6379")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_REDIS_URL");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    let slow = [("MEDIA_REDIS_URL", "rediss://redis:6380"), ("MEDIA_REDIS_TIMEOUT", "10s")];
    assert_eq!(Config::from_vars(&vars(&slow)).unwrap_err().var, "MEDIA_REDIS_TIMEOUT");
}

#[test]
fn connection_limits_default_to_a_per_ip_cap_and_a_keepalive_timeout_and_are_checked() {
    let ops = Config::from_vars(&HashMap::new()).expect("defaults").ops;
    assert_eq!(ops.max_connections_per_ip, 64);
    assert_eq!(ops.keepalive_timeout, Duration::from_secs(15));
    assert_eq!(ops.readyz_rate, RateLimit { rps: 10, burst: 20 });
    let set = vars(&[
        ("MEDIA_MAX_CONNECTIONS_PER_IP", "0"),
        ("MEDIA_KEEPALIVE_TIMEOUT", "1m"),
        ("MEDIA_RATE_LIMIT_READYZ_RPS", "0"),
    ]);
    let ops = Config::from_vars(&set).expect("valid").ops;
    assert_eq!(ops.max_connections_per_ip, 0, "0 turns the cap off");
    assert_eq!(ops.keepalive_timeout, Duration::from_secs(60));
    assert!(!ops.readyz_rate.enabled());
    for (name, value) in [
        ("MEDIA_KEEPALIVE_TIMEOUT", "0s"),
        ("MEDIA_KEEPALIVE_TIMEOUT", "1h"),
        ("MEDIA_MAX_CONNECTIONS_PER_IP", "-1"),
        ("MEDIA_RATE_LIMIT_READYZ_BURST", "many"),
    ] {
        let err = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
        assert_eq!(err.var, name, "{value}: {err}");
    }
}

#[test]
fn object_encryption_defaults_on_for_the_filesystem_and_off_for_s3_and_needs_links_in_production() {
    assert!(Config::from_vars(&HashMap::new()).unwrap().object_encryption, "embedded default: on");
    let s3 = vars(&[("MEDIA_S3_BUCKET", "b")]);
    assert!(!Config::from_vars(&s3).unwrap().object_encryption, "S3, the Go drop-in: off");
    let on = vars(&[("MEDIA_S3_BUCKET", "b"), ("MEDIA_OBJECT_ENCRYPTION", "on")]);
    assert!(Config::from_vars(&on).unwrap().object_encryption);
    let off = vars(&[("MEDIA_OBJECT_ENCRYPTION", "off")]);
    assert!(!Config::from_vars(&off).unwrap().object_encryption);
    let err = Config::from_vars(&vars(&[("MEDIA_OBJECT_ENCRYPTION", "maybe")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_OBJECT_ENCRYPTION");
    let err = Config::from_vars(&vars(&[("MEDIA_LINK_SIGNING_KEY", "short")])).unwrap_err();
    assert_eq!(err.var, "MEDIA_LINK_SIGNING_KEY");

    let keys = master_keys();
    let link_key = "ab".repeat(32);
    let production = |extra: &[(&str, &str)]| {
        let mut all = vec![
            ("MEDIA_PROFILE", "production"),
            ("AUTH_ISSUER", "https://id.example"),
            ("AUTH_AUDIENCE", "media-api"),
            ("MEDIA_MASTER_KEYS", keys.as_str()),
            ("MEDIA_DATABASE_URL", "postgres://db/media"),
            ("MEDIA_S3_BUCKET", "media"),
        ];
        all.extend_from_slice(extra);
        Config::from_vars(&vars(&all))
    };
    assert!(production(&[]).is_ok(), "S3 without encryption needs no link key");
    let line = production(&[("MEDIA_OBJECT_ENCRYPTION", "on")]).unwrap_err().to_string();
    assert!(
        line.contains("MEDIA_LINK_SIGNING_KEY is not set") && line.contains("MEDIA_PUBLIC_URL is not set"),
        "{line}"
    );
    let complete = production(&[
        ("MEDIA_OBJECT_ENCRYPTION", "on"),
        ("MEDIA_LINK_SIGNING_KEY", &link_key),
        ("MEDIA_PUBLIC_URL", "https://media.example.com/"),
    ])
    .expect("encryption with its links configured");
    assert!(complete.object_encryption && complete.link_signing_key.is_some());
    assert!(!format!("{complete:?}").contains(&link_key), "the link key is never shown");
}

#[test]
fn the_upload_minimum_rate_defaults_to_a_kibibyte_and_is_checked() {
    assert_eq!(Config::from_vars(&HashMap::new()).unwrap().ops.upload_min_rate, 1024);
    assert_eq!(Config::from_vars(&vars(&[("MEDIA_UPLOAD_MIN_RATE", "0")])).unwrap().ops.upload_min_rate, 0, "off");
    assert_eq!(Config::from_vars(&vars(&[("MEDIA_UPLOAD_MIN_RATE", "16KiB")])).unwrap().ops.upload_min_rate, 16 << 10);
    for value in ["17MiB", "1GiB", "fast", "-1"] {
        let err = Config::from_vars(&vars(&[("MEDIA_UPLOAD_MIN_RATE", value)])).unwrap_err();
        assert_eq!(err.var, "MEDIA_UPLOAD_MIN_RATE", "{value}: {err}");
    }
}
