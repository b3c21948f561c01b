#[path = "../../../conformance-tests/src/harness/redis.rs"]
mod harness;

#[tokio::test]
async fn smoke() {
    let server = harness::RedisServer::start().unwrap();
    let url = format!("{}?ttl=2s&namespace=smoke", server.url());
    let coord = quorate_redis::connect(&quorate_core::Config::parse(&url).unwrap())
        .await
        .unwrap();
    let s1 = coord.session().await.unwrap();
    let s2 = coord.session().await.unwrap();
    let g = s1.mutex("a").lock().await.unwrap();
    println!("fence {}", g.fence());
    assert!(s2.mutex("a").try_lock().await.unwrap().is_none());
    let w = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.mutex("a").lock().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    g.release().await.unwrap();
    let g2 = w.await.unwrap().unwrap();
    println!("fence {}", g2.fence());
    g2.release().await.unwrap();
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    println!("{:?}", coord.leftovers().await.unwrap());
}
