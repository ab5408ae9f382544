//! API tokens: stored by hash, listed newest first, revoked once.

use domain::{NewToken, Role, Timestamp, TokenHash, TokenId};
use store::{Store, StoreError};

use crate::db::{at, test_db};

fn token(n: u8, secret: &str) -> NewToken {
    NewToken {
        id: TokenId::from_random([n; 8]),
        name: format!("token {n}"),
        role: Role::Operator,
        hash: TokenHash::of_secret(secret),
        expires_at: Some(Timestamp::from_millis(10_000)),
    }
}

#[tokio::test]
async fn tokens() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    assert_eq!(s.token_count().await.unwrap(), 0);
    let t1 = s.create_token(&token(1, "one"), &at(100)).await.unwrap();
    let t2 = s.create_token(&token(2, "two"), &at(200)).await.unwrap();
    let t3 = s.create_token(&token(3, "three"), &at(200)).await.unwrap();
    assert_eq!(s.token_count().await.unwrap(), 3);

    let err = s.create_token(&token(1, "other"), &at(300)).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { kind: "token", .. }), "{err:?}");
    let err = s.create_token(&token(4, "one"), &at(300)).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { kind: "token", .. }), "{err:?}");

    assert_eq!(s.token_by_hash(&TokenHash::of_secret("one")).await.unwrap(), Some(t1.clone()));
    assert_eq!(s.token_by_hash(&TokenHash::of_secret("nope")).await.unwrap(), None);
    assert_eq!(s.list_tokens().await.unwrap(), [t3, t2, t1.clone()]);

    let revoked = s.revoke_token(&t1.id, &at(500)).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(Timestamp::from_millis(500)));
    let again = s.revoke_token(&t1.id, &at(600)).await.unwrap();
    assert_eq!(again.revoked_at, Some(Timestamp::from_millis(500)));
    assert!(!again.is_usable_at(Timestamp::from_millis(1)));
    let err = s.revoke_token(&TokenId::from_random([9; 8]), &at(600)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "token", .. }), "{err:?}");
    db.drop().await;
}
