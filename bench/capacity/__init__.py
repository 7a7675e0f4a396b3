"""`python -m bench.capacity`: instances, database sizing, pools, Redis and gateway memory for a
number of concurrent users, from the bench's measured cost per request and a traffic model."""
