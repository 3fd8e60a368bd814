module kubeedge-rs/go-peer

go 1.19
