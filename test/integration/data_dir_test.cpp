// jobs.data_dir at start: a directory the pool cannot write stops it with a config error
// (exit 2) naming the key, the directory and the fix, before any worker starts; a usable one
// is created at start, not at the first job.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using namespace std::chrono_literals;

TEST_CASE("an unwritable jobs.data_dir stops the pool at start with exit code 2",
          "[integration][jobs]") {
    TempDir dir;
    // Tests run as root, who writes through any mode bits; a directory under a regular file
    // cannot be created by anyone.
    const auto blocker = dir.file("not-a-directory");
    std::ofstream(blocker) << "a file, not a directory\n";
    const auto data_dir = blocker + "/data";

    TestProcess pool(LLAMA_POOL_BINARY, fake_pool_args(1, {"--port", "0", "--data-dir", data_dir}));
    const auto code = pool.wait_exit(20s);
    const auto output = pool.output();
    INFO(output);
    REQUIRE(code.has_value());
    CHECK(*code == 2);
    CHECK(output.find("jobs.data_dir") != std::string::npos);
    CHECK(output.find(data_dir) != std::string::npos);
    CHECK(output.find("writable") != std::string::npos);
    CHECK(output.find("--data-dir ''") != std::string::npos);
    // It stopped before it served or started a worker.
    CHECK(output.find("listening") == std::string::npos);
    CHECK(output.find("worker_spawned") == std::string::npos);
    CHECK_FALSE(std::filesystem::exists(data_dir));
}

TEST_CASE("a writable jobs.data_dir is created at start", "[integration][jobs]") {
    TempDir dir;
    const auto data_dir = dir.file("data");
    PoolProcess pool(fake_pool_args(1, {"--data-dir", data_dir}));
    REQUIRE(pool.port() != 0);
    CHECK(std::filesystem::is_directory(data_dir + "/jobs"));
    // The write check leaves nothing behind.
    CHECK(std::filesystem::is_empty(data_dir + "/jobs"));
}

TEST_CASE("an empty jobs.data_dir keeps jobs in memory and needs no directory",
          "[integration][jobs]") {
    PoolProcess pool(fake_pool_args(1, {"--data-dir", ""}));
    CHECK(pool.port() != 0);
}
