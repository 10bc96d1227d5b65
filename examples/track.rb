# Point the official mixpanel-ruby SDK at the local evspool sidecar: the app
# never waits on Mixpanel, and a Mixpanel outage loses nothing.
#
#   gem install mixpanel-ruby
#   evspool run --sink mixpanel &      # EVSPOOL_SINK_TOKEN=<project token>
#   ruby examples/track.rb
require "mixpanel-ruby"

consumer = Mixpanel::Consumer.new(
  "http://127.0.0.1:8787/track",   # events
  "http://127.0.0.1:8787/engage",  # people
  "http://127.0.0.1:8787/groups",  # groups
)
tracker = Mixpanel::Tracker.new(ENV.fetch("MIXPANEL_TOKEN", "demo-token")) do |type, message|
  consumer.send!(type, message)
end
tracker.track("user-42", "Signed up", { "plan" => "pro" })

# Or without any SDK, straight to the native endpoint (answers 202 after the durable commit):
require "net/http"
require "json"
uri = URI("http://127.0.0.1:8787/v1/events?topic=track")
res = Net::HTTP.post(uri, { event: "Signed up", properties: { distinct_id: "user-42" } }.to_json,
                     "Content-Type" => "application/json")
puts res.code # => "202"
