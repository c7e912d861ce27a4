#pragma once

#include <string>

#include "common/config.hpp"
#include "common/log.hpp"
#include "proxy/group_set.hpp"
#include "proxy/route_handler.hpp"
#include "workloads/job_runner.hpp"
#include "workloads/job_store.hpp"
#include "workloads/summarizer.hpp"

namespace llama_pool {

// POST /v1/summarize, and the async jobs API over it: POST /v1/jobs, GET /v1/jobs,
// GET /v1/jobs/{id}, DELETE /v1/jobs/{id}. Every chunk goes through the relay, so it waits
// in the same FIFO queue as client requests, is retried and feeds the breakers like them.
// A body's `model` picks the group, as for any request (else the default group).
class WorkloadRoutes final : public RouteHandler {
  public:
    WorkloadRoutes(const PoolConfig& config, GroupSet& groups, Logger& log);
    ~WorkloadRoutes() override { stop(); }

    // Loads the jobs a previous run left in the data directory.
    void start();
    // Ends the jobs still queued or running as interrupted; call before the relay stops.
    void stop() { runner_.stop(); }
    std::vector<std::pair<std::string, std::size_t>> job_counts() { return store_.counts(); }

    bool handle(Exchange& exchange, const std::string& path,
                const std::string& request_id) override;

  private:
    void summarize(Exchange& exchange, const std::string& request_id);
    void submit_job(Exchange& exchange, const std::string& request_id);
    void list_jobs(Exchange& exchange, const std::string& request_id);
    void job(Exchange& exchange, const std::string& id, const std::string& request_id);
    bool parse_body(Exchange& exchange, bool job, SummarizeRequest& out,
                    const std::string& request_id);
    // Runs one summary through the relay. `parent` is what else should stop its calls (the
    // client's connection, the server's shutdown).
    SummaryResult run(const SummarizeRequest& request, const std::string& request_id,
                      CancelToken& cancel, IoWatch parent, std::function<bool()> parent_gone,
                      const std::string& remote, const Summarizer::ProgressFn& progress,
                      const ChunkMemo* memo = nullptr);

    const PoolConfig& config_;
    GroupSet& groups_;
    Logger& log_;
    SteadyTimeSource time_;
    SummarizeDefaults defaults_;
    JobStore store_;
    JobRunner runner_;
};

// The reply of /v1/summarize and a finished job's result.
nlohmann::json summary_reply(const SummaryResult& result);

// Tokens per slot in a worker's GET /props body (current llama-server and BitNet's fork
// alike), 0 when it does not say. Pure.
int slot_context_from_props(const std::string& props_body);

}  // namespace llama_pool
